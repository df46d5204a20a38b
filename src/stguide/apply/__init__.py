"""Applying a trained model where there is no ST: model bundles (``stguide export``) and slide prediction (``stguide predict``)."""
