"""Box agreement with the FP32 detector: decode, class-wise NMS, then F1 of matched detections.

``box_f1(candidate, reference, extras)`` is a trtmix metric (``--metric examples/detector/metric.py:box_f1``):
the plan's detections are matched one to one to the FP32 model's (same class, IoU ≥ 0.5); precision and recall
over the whole split give F1, 1.0 when every detection is kept.  Split-level: detections are pooled over all images.
"""

import numpy as np

SCORE_THRESHOLD, NMS_IOU, MATCH_IOU = 0.3, 0.5, 0.5


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (cx, cy, w, h) box with many."""

    def corners(b):
        half_w, half_h = b[..., 2] / 2, b[..., 3] / 2
        return b[..., 0] - half_w, b[..., 1] - half_h, b[..., 0] + half_w, b[..., 1] + half_h

    x0, y0, x1, y1 = corners(box)
    bx0, by0, bx1, by1 = corners(boxes)
    width = np.clip(np.minimum(x1, bx1) - np.maximum(x0, bx0), 0, None)
    inter = width * np.clip(np.minimum(y1, by1) - np.maximum(y0, by0), 0, None)
    return inter / (box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter + 1e-9)


def detections(boxes: np.ndarray, scores: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(class, box) pairs of one image after thresholding and class-wise non-maximum suppression."""
    kept = []
    for cls in range(scores.shape[-1]):
        order = np.argsort(-scores[:, cls])
        order = order[scores[order, cls] > SCORE_THRESHOLD]
        while len(order):
            best, order = order[0], order[1:]
            kept.append((cls, boxes[best]))
            order = order[iou(boxes[best], boxes[order]) < NMS_IOU]
    return kept


def box_f1(candidate: dict, reference: dict, extras: dict) -> float:
    matched = found = expected = 0
    for image in range(len(reference["boxes"])):
        ours = detections(candidate["boxes"][image], candidate["scores"][image])
        theirs = detections(reference["boxes"][image], reference["scores"][image])
        found, expected = found + len(ours), expected + len(theirs)
        free = list(theirs)
        for cls, box in ours:
            same = [i for i, (c, _) in enumerate(free) if c == cls]
            if same:
                overlaps = iou(box, np.stack([free[i][1] for i in same]))
                if overlaps.max() >= MATCH_IOU:
                    free.pop(same[int(overlaps.argmax())])
                    matched += 1
    if expected == 0 and found == 0:
        return 1.0
    precision, recall = matched / max(found, 1), matched / max(expected, 1)
    return 0.0 if matched == 0 else 2 * precision * recall / (precision + recall)
