"""Evaluation: the self-trained evaluator network, preservation metrics, Fréchet distances and the HTML report.

One module per workflow rule: `train_evaluator`, `evaluate`, `report`; `controls` holds the three
control rules (previous image through the autoencoder, blurred, and the autoencoder's quality gate).
"""
