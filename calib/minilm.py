"""Calibration recipe for MiniLM-L6: sentences from CPython's ``pydoc_data.topics``, tokenized by the model's own
tokenizer (batch 8, 128 tokens, inputs ``input_ids`` and ``attention_mask``).

    trtmix calibrate minilm.onnx --data calib/minilm.py --method entropy -o ranges.json
"""

from trtmix.models import minilm


def load_data(split="calibration", batch=8, seq=128, batches=32):
    yield from minilm.load_data(split, batch=int(batch), seq=int(seq), batches=int(batches))
