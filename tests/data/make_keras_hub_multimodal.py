"""Writes tests/data/keras_hub_tiny_gemma3_multimodal: a tiny keras-hub
Gemma3Backbone with a vision encoder (a multimodal Gemma 3 preset, as
keras-hub's gemma3_4b), saved with keras-hub's own save_to_preset.

Run from the repository root:  python tests/data/make_keras_hub_multimodal.py
"""

import pathlib
import shutil

from keras_hub.models import Gemma3Backbone
from keras_hub.src.models.gemma3.gemma3_vision_encoder import Gemma3VisionEncoder

FOLDER = pathlib.Path(__file__).resolve().parent / "keras_hub_tiny_gemma3_multimodal"


def main():
    encoder = Gemma3VisionEncoder(
        image_size=28, patch_size=14, num_heads=2, hidden_dim=16, num_layers=1,
        intermediate_dim=32, output_dim=32, pool_size=2,
    )
    backbone = Gemma3Backbone(
        vocabulary_size=640, image_size=28, num_layers=2, num_query_heads=4,
        num_key_value_heads=1, hidden_dim=32, intermediate_dim=64, head_dim=16,
        query_head_dim_normalize=True, use_post_ffw_norm=True,
        use_post_attention_norm=True, use_sliding_window_attention=True,
        sliding_window_size=4, vision_encoder=encoder,
    )
    shutil.rmtree(FOLDER, ignore_errors=True)
    backbone.save_to_preset(str(FOLDER))
    print("wrote", FOLDER)


if __name__ == "__main__":
    main()
