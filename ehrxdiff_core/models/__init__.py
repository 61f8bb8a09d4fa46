"""Models: autoencoder, CXR–EHR CLIP, fusion adapter, latent diffusion, sampling.

One module per stage (`train_vae`, `train_clip`, `train_ldm`, `sample`), whose imports are the
model modules that stage uses; see `README.md` here for the faithful-vs-fixed choices table.
"""
