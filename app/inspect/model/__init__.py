"""The model: families and layouts, discovery, the Adapter, block plans, attention capture and its variants."""
