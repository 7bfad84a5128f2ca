"""Image-generation metrics: feature distances, the data-set classifier, VAE likelihoods."""
