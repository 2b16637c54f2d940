"""tf.Transform preprocessing_fn run by TFX Transform over the weighted (user, item) pairs.

Builds the id vocabularies (full pass over the train split) and scales the weights:
  user_idx, item_idx  int64 ids from the vocabularies "user_id" / "item_id"
                      (ids outside the train vocabulary map to the OOV bucket, index = size)
  weight              V_ij as given by the log transform
  rating              V_ij / max(V) over the train split, in (0, 1]
"""

import tensorflow as tf
import tensorflow_transform as tft

USER_VOCAB = "user_id"
ITEM_VOCAB = "item_id"


def _dense(x, default):
    """A [batch] dense tensor from a [batch, 1] dense, sparse or ragged feature."""
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]), default_value=default)
    elif isinstance(x, tf.RaggedTensor):
        x = x.to_tensor(default_value=default, shape=[None, 1])
    return tf.reshape(x, [-1])


def preprocessing_fn(inputs, custom_config=None):
    """custom_config: {"code": the code's fingerprint}, only a part of Transform's cache key."""
    user = _dense(inputs["user_id"], "")
    item = _dense(inputs["item_id"], "")
    weight = tf.cast(_dense(inputs["weight"], 0.0), tf.float32)
    return {
        "user_idx": tft.compute_and_apply_vocabulary(user, vocab_filename=USER_VOCAB, num_oov_buckets=1),
        "item_idx": tft.compute_and_apply_vocabulary(item, vocab_filename=ITEM_VOCAB, num_oov_buckets=1),
        "weight": weight,
        "rating": weight / tf.maximum(tft.max(weight), 1e-9),
    }
