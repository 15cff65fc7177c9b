"""Evaluation of MAE and i-MAE encoders.

* linear separability LS(alpha) and degree of semantics DS(alpha) — OUR operationalisations of the paper's
  two metrics (its formulas are unavailable; see :mod:`.separability` and :mod:`.semantics`);
* representation quality: linear probe, kNN and fine-tuning (:mod:`.probes`, :mod:`.finetune`);
* reconstruction quality: PSNR / SSIM vs alpha (:mod:`.reconstruction`);
* :func:`evaluate`, the one entry point (also ``python -m imae evaluate``);
* :func:`code_version`, a hash of the metric, data and model source (the evaluation cache's key).
"""

from .sourcehash import code_version
from .evaluate import WHATS, evaluate, options_for, write_result
from .features import (DEFAULT_ALPHAS, POOLS, EvalData, Pairs, Split, clean_features, load_eval_data, make_pairs,
                       mixture_features)
from .finetune import finetune
from .loading import LoadedModel, load_model, load_reference, resolve_device
from .probes import knn, knn_classifier, linear_classifier, linear_probe
from .reconstruction import PSNR_CAP, psnr, reconstruction_quality, ssim
from .ridge import RIDGE_GRID, RidgeFit, fit_ridge, r2_score
from .semantics import degree_of_semantics
from .separability import linear_separability

__all__ = ["code_version", "WHATS", "evaluate", "options_for", "write_result", "DEFAULT_ALPHAS", "POOLS",
           "EvalData", "Pairs", "Split", "clean_features", "load_eval_data", "make_pairs", "mixture_features",
           "finetune", "LoadedModel", "load_model", "load_reference", "resolve_device", "knn", "knn_classifier",
           "linear_classifier", "linear_probe", "PSNR_CAP", "psnr", "reconstruction_quality", "ssim", "RIDGE_GRID",
           "RidgeFit", "fit_ridge", "r2_score", "degree_of_semantics", "linear_separability"]
