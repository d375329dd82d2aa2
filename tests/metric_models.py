"""Small metric models for offline tests: a CLIP trained for a minute on the shapes data.

A CLIP score is only meaningful from a CLIP that aligns images and captions, and no weights
can be downloaded here, so the tests train a tiny one (ViT on 32×32 images, two layers each
side, the project's own tokenizer) on the embedded shapes dataset, deterministically, and
save it as a regular transformers CLIP folder, the way a user's downloaded one would be.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from obsdiff_hub.shapes.dataset import sample_batch
from obsdiff_hub.tiny import make_clip_tokenizer


def train_tiny_clip(folder: Path, steps: int = 250, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tokenizer = make_clip_tokenizer(max_length=16)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=32,
    )
    model = CLIPModel(config)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for step in range(steps):
        images, captions, _ = sample_batch(64, seed=seed * 100_000 + step)
        pixels = (images + 1) / 2  # [-1, 1] → [0, 1], then CLIP's normalisation
        mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
        text = tokenizer(captions, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
        out = model(
            input_ids=text["input_ids"],
            attention_mask=text["attention_mask"],
            pixel_values=(pixels - mean) / std,
            return_loss=True,
        )
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
