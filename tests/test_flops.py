"""The analytic FLOP counter against hand counts and the built model's weights."""

import keras_hub
from omegaconf import OmegaConf

from app.models.flops import albert_flops

TINY = {"num_layers": 2, "num_inner_repetitions": 1, "embedding_dim": 16, "hidden_dim": 32,
        "intermediate_dim": 64}


def test_classifier_forward_matches_a_hand_count():
    count = albert_flops(OmegaConf.create(TINY), sequence_length=8, num_outputs=3)
    # 2 FLOPs per multiply-add; L=8 tokens, E=16, H=32, I=64, 2 layers, 3 classes.
    assert count.embedding == 2 * 8 * 16 * 32                                  # 8192
    assert count.encoder == 2 * (2 * 8 * (4 * 32 * 32 + 2 * 32 * 64))         # 262144
    assert count.attention == 2 * (2 * 2 * 8 * 8 * 32)                        # 16384
    assert count.heads == 2 * 32 * 32 + 2 * 32 * 3                            # 2240
    assert count.forward == 288_960
    assert count.training == 3 * 288_960  # backward = 2x forward


def test_masked_lm_head_and_repeated_layers():
    shared = {**TINY, "num_inner_repetitions": 2}
    count = albert_flops(shared, sequence_length=8, num_outputs=2, vocabulary_size=100,
                         mask_positions=5)
    assert count.encoder == 4 * (2 * 8 * (4 * 32 * 32 + 2 * 32 * 64))  # 4 layer calls
    assert count.heads == 2 * 32 * 32 + 2 * 32 * 2 + 5 * (2 * 32 * 16 + 2 * 16 * 100)


def test_encoder_count_is_twice_the_layer_kernels_per_token():
    backbone = keras_hub.models.AlbertBackbone(vocabulary_size=50, max_sequence_length=16,
                                               num_heads=2, **TINY)
    layer = backbone.get_layer("group_0_inner_layer_0")
    kernels = sum(w.numpy().size for w in layer.weights if "kernel" in w.path)
    count = albert_flops(TINY, sequence_length=8)
    assert count.encoder == TINY["num_layers"] * 2 * 8 * kernels
    projection = backbone.get_layer("embedding_projection").kernel.numpy().size
    assert count.embedding == 2 * 8 * projection
