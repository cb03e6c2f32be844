"""`cai pipeline run|status`: the whole method from one YAML (`spec`: its keys, and which file
is read by default), its stages keyed by content and rerun only when their inputs change
(`stages`)."""
