"""Evaluation: the self-trained evaluator network, preservation metrics, Fréchet distances and the HTML report.

Entry points for the workflow scripts live in `ehrxdiff_core.evaluation.stages`.
"""
