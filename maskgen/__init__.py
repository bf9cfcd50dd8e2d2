"""maskgen: domain-generalising 3D segmentation with stable features and random view masking."""

__version__ = "0.1.0"
