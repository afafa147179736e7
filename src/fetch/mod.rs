//! Downloading pretrained weights: manifests, the cache, resumable verified downloads.
