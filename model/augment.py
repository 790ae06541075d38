"""Training augmentation of one (photo, alpha) pair, as tf ops: crop, flip, a new background,
colour jitter. Used inside ``tf.data`` by ``model.data.train_dataset`` and eagerly in tests.

Every random choice comes from a shape-[2] stateless seed, so equal seeds give equal pairs
(an exact resume needs that). The new background is the standard portrait-matting
augmentation: the photo's foreground (photo × alpha) laid over another background,
``alpha · photo + (1 − alpha) · background``, so the label stays the same and only pixels
with alpha < 1 change. Without a background dataset, the backgrounds are made from what a
pair holds:

* a smooth random colour field (a few random colours bilinearly enlarged, plus grain): it
  teaches that colour and texture alone do not make a person;
* the photo itself, shifted and strongly blurred (a bokeh-like background with the scene's
  own colours): the person's ghost is a soft blob labelled background.

Another training photo would be a more natural background, but every training photo here holds
people, and a sharp person labelled background contradicts the group photos whose masks hold
every person.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from model.preprocess import normalize, resize

# stateless_fold_in data naming the background's seed: the crop/flip/colour seeds stay those
# of a run without backgrounds, so composite=0 augments exactly as before.
_BACKGROUND_STREAM = 7


@dataclass(frozen=True)
class Augment:
    """Training augmentation. Crops keep >= 35% of the photo so the person mostly stays in view;
    colour jitter is mild because alpha does not depend on colour but over-strong jitter makes
    photos no camera would take. ``composite``: the probability of a new background."""

    crop_area: tuple[float, float] = (0.35, 1.0)
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02
    composite: float = 0.0


def _smooth(images: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    # model.preprocess.resize is the one resize of photos, but keras.ops needs the size as
    # Python ints inside tf.data, and these sizes are random: the same antialiased bilinear
    # filter, as the TensorFlow op it calls.
    return tf.image.resize(images, size, method="bilinear", antialias=True)


def new_background(rgb: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A background the size of ``rgb`` (HxWx3 in [0, 1]): a colour field or a blurred copy."""
    kind_seed, cells_seed, field_seed, tone_seed, grain_seed, shift_seed, blur_seed = \
        tf.unstack(tf.random.experimental.stateless_split(seed, 7))
    size = tf.shape(rgb)[:2]
    cells = tf.random.stateless_uniform([2], cells_seed, 2, 9, tf.int32)
    field = _smooth(tf.random.stateless_uniform(tf.concat([cells, [3]], 0), field_seed), size)
    # Random colours per channel are garish: pull them towards their grey by a random share.
    grey = tf.reduce_mean(field, axis=-1, keepdims=True)
    field = grey + tf.random.stateless_uniform([], tone_seed, 0.2, 1.0) * (field - grey)
    field += tf.random.stateless_normal(tf.shape(rgb), grain_seed, stddev=0.02)
    # Shifted by a quarter to three quarters of each side (wrapping), so the ghost of the person
    # moves away from where the person is; blurred by shrinking to 1/8..1/16 and enlarging.
    shift = tf.cast(tf.cast(size, tf.float32) * tf.random.stateless_uniform(
        [2], shift_seed, 0.25, 0.75), tf.int32)
    shifted = tf.roll(rgb, shift, axis=[0, 1])
    factor = tf.random.stateless_uniform([], blur_seed, 8.0, 16.0)
    small = tf.maximum(tf.cast(tf.cast(size, tf.float32) / factor, tf.int32), 1)
    blurred = _smooth(_smooth(shifted, small), size)
    use_field = tf.random.stateless_uniform([], kind_seed) < 0.5
    return tf.clip_by_value(tf.where(use_field, field, blurred), 0.0, 1.0)


def composite_background(rgb: tf.Tensor, alpha: tf.Tensor, seed: tf.Tensor,
                         probability: float) -> tf.Tensor:
    """With ``probability``, ``rgb`` (HxWx3, [0, 1]) over a new background through ``alpha``
    (HxWx1, [0, 1]); otherwise ``rgb`` unchanged. Pixels with alpha == 1 never change."""
    if not probability:
        return rgb
    coin_seed, background_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    composite = alpha * rgb + (1.0 - alpha) * new_background(rgb, background_seed)
    # Where alpha is 1 the blend is rgb * 1 + background * 0: bit-exact rgb already; the
    # select makes that explicit and keeps a non-finite background from leaking in.
    composite = tf.where(alpha >= 1.0, rgb, composite)
    take = tf.random.stateless_uniform([], coin_seed) < probability
    return tf.where(take, composite, rgb)


def augment_pair(image: tf.Tensor, alpha: tf.Tensor, seed: tf.Tensor, size: int,
                 augment: Augment) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8 image HxWx3 + alpha HxWx1 -> normalised image and alpha in [0, 1], both size².

    Image and alpha are stacked so crop, resize and flip move them together; the new
    background goes in before the colour jitter, so the whole composite is jittered alike.
    """
    seed = tf.cast(seed, tf.int64)
    crop_seed, flip_seed, *colour_seeds = tf.unstack(
        tf.random.experimental.stateless_split(seed, 6))
    stacked = tf.concat([tf.cast(image, tf.float32), tf.cast(alpha, tf.float32)], axis=-1)
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), seed=crop_seed,
        min_object_covered=0.0, aspect_ratio_range=augment.crop_aspect,
        area_range=augment.crop_area, max_attempts=10, use_image_if_no_bounding_boxes=True)
    stacked = resize(tf.slice(stacked, begin, extent), (size, size))
    if augment.flip:
        stacked = tf.image.stateless_random_flip_left_right(stacked, flip_seed)
    rgb = stacked[..., :3] / 255.0
    label = tf.clip_by_value(stacked[..., 3:] / 255.0, 0.0, 1.0)
    rgb = composite_background(
        rgb, label, tf.random.experimental.stateless_fold_in(seed, _BACKGROUND_STREAM),
        augment.composite)
    brightness, contrast, saturation, hue = colour_seeds
    if augment.brightness:
        rgb = tf.image.stateless_random_brightness(rgb, augment.brightness, brightness)
    if augment.contrast:
        rgb = tf.image.stateless_random_contrast(
            rgb, 1 - augment.contrast, 1 + augment.contrast, contrast)
    if augment.saturation:
        rgb = tf.image.stateless_random_saturation(
            rgb, 1 - augment.saturation, 1 + augment.saturation, saturation)
    if augment.hue:
        rgb = tf.image.stateless_random_hue(rgb, augment.hue, hue)
    # normalize() divides by the image's maximum, so [0, 1] input is as good as [0, 255].
    return normalize(tf.clip_by_value(rgb, 0.0, 1.0)), label
