"""ERM: the image-only UNet, same recipe (the paper's main baseline)."""

from maskgen.methods.base import Method, register_method


@register_method("erm")
class ERM(Method):
    uses_features = False
