"""Pure PyTorch + transformers inspection code; never imports the web layer."""
