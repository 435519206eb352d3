"""The model zoo of ``shared/spec/models.md``: pure ``nn.Module`` networks, one file per family.

Each ``conf/model/<name>.yaml`` names a builder class here by ``_target_`` and lists the
model's knobs; the training loop adds ``num_classes``. Every network is a
:class:`~cifar_sweep.models.layers.Classifier` and so offers:

- ``forward(x)``: logits (N, num_classes) for standardised images (N, 3, 32, 32);
- ``features(x)``: penultimate activations (N, D), with
  ``forward(x) == head(features(x)) * output_scale``;
- ``trunk``: the convolutional part alone, which takes larger images (feature maps);
- ``init_from_data(images)`` on networks that need a data-dependent init (airbench);
- ``on_epoch_start(epoch)`` on networks that change themselves during training (airbench
  freezes its whitening bias after a few epochs).

Families: ``keras_tutorial`` (logreg, mlp, cnn_simple, cnn_adv), ``tf_convnet``,
``keras_cnn``, ``lenet_vgg`` (lenet, vgg16_seed), ``resnets`` (resnet_seed, resnet18,
resnet9) and ``airbench``.
"""

from .layers import Classifier, count_params

__all__ = ["Classifier", "count_params"]
