"""One module per area of the UI; each defines a `router` of pages under /ui."""
