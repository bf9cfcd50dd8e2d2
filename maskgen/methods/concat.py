"""Concat: the UNet on [image, g(image)] with no masking at all (MaskGen with p = 0).

The paper's ablation (Tables 5 and 6, p = 0): plain ERM on the concatenated input learns the shortcut
through the image and mostly ignores the stable features, so it helps little or even hurts; this is the
reason MaskGen masks views. The base class already composes [image, features] and trains without
masking; this class only declares that it reads features (and has no hyper-parameters).
"""

from maskgen.methods.base import IMAGE_NORM, Method, register_method


@register_method("concat")
class Concat(Method):
    uses_features = True
    HPARAMS = {"image_norm": IMAGE_NORM}
