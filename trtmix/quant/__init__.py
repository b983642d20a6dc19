"""Precision plans and how they are written into graphs: quantizers, flavours, their rules, the compiler."""
