"""The model as a graph: ONNX loading and indexing, quantizable units, and torch → ONNX export."""
