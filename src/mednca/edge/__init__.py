"""Models for devices without mednca or torch: ONNX / TorchScript export and weight rounding."""
