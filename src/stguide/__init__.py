"""stguide: spatial-transcriptomics-guided pathology image recognition.

Stage 1 fits a batch-agnostic gene encoder (scVI/scANVI, patient as the batch); stage 2 trains an image encoder
against it contrastively; evaluation scores frozen image features on patients never seen in any fit.
"""
__version__ = "0.1.0"
