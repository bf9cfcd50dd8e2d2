from maskgen.models.unet import UNet

__all__ = ["UNet"]
