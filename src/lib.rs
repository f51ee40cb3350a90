//! frostgrad: tensors and reverse-mode autograd that skip every gradient no trainable parameter needs.
