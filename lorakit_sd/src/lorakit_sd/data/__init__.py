"""Training data: dataset readers, image items and buckets, latent and text caches, masks,
caption augmentation."""
