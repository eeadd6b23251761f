"""The analytic FLOP counter against hand counts, the built model's weights and a preset."""

import keras_hub
from omegaconf import OmegaConf

from app.models.backbone import build_backbone
from app.models.flops import albert_flops, architecture, batch_flops

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


def test_count_reads_the_architecture_of_a_preset_built_model(tmp_path):
    """With `model.preset`, the count follows the preset's shape, not the `model` config's."""
    shape = {"num_layers": 3, "num_inner_repetitions": 1, "embedding_dim": 8, "hidden_dim": 24,
             "intermediate_dim": 40}
    keras_hub.models.AlbertBackbone(vocabulary_size=50, max_sequence_length=16, num_heads=2,
                                    **shape).save_to_preset(str(tmp_path / "preset"))
    model = OmegaConf.create({**TINY, "preset": str(tmp_path / "preset"), "num_heads": 2,
                              "num_groups": 1, "dropout": 0.0, "max_sequence_length": 16,
                              "classifier_dropout": 0.0})
    backbone = build_backbone(model, vocabulary_size=50)
    assert architecture(backbone) == shape
    count = albert_flops(architecture(backbone), sequence_length=8)
    assert count.encoder == 3 * (2 * 8 * (4 * 24 * 24 + 2 * 24 * 40))
    assert count.embedding == 2 * 8 * 8 * 24
    assert count.forward != albert_flops(model, sequence_length=8).forward


def test_batch_flops_counts_padded_and_real_tokens():
    def training(length):
        return albert_flops(TINY, sequence_length=length, num_outputs=2).training

    padded, real = batch_flops(TINY, lengths=[3, 8, 3, 5], width=8)
    assert padded == 4 * training(8)
    assert real == 2 * training(3) + training(5) + training(8)
    forward, _ = batch_flops(TINY, lengths=[8], width=8, training=False)
    assert forward == albert_flops(TINY, sequence_length=8).forward
