"""rsfm pretraining (imported as ``rsfm_train``): data, losses, DeepSpeed engine.
The only package of rsfm that imports DeepSpeed; ``rsfm_core`` never imports it."""
