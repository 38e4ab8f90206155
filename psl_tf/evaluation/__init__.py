"""Evaluation of pre-trained backbones: linear probes, kNN, fine-tuning, transfer, online probes, reports."""
