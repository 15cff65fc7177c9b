"""Benchmarks: throughput of the training step (faithful vs fast) and the CPU end-to-end pipeline."""
