"""Models: autoencoder, CXR–EHR CLIP, fusion adapter, latent diffusion, sampling.

Entry points live in `stages.py` (imported lazily, so `models.training` stays light for other
users such as the evaluator); see `README.md` here for the faithful-vs-fixed choices table.
"""

__all__ = ["sample", "train_clip", "train_ldm", "train_vae"]


def __getattr__(name: str):
    if name in __all__:
        from ehrxdiff_core.models import stages

        return getattr(stages, name)
    raise AttributeError(name)
