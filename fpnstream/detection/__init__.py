"""The detector: torchvision's FPN Faster R-CNN family, weights and labels, batched
preprocessing, lanes (threads running forward passes) and the backend the pipeline calls."""
