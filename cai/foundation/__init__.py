"""The foundation every part of cai stands on: errors, configs, locks, templates, the model
store, and the files jobs read and write (inputs, records, manifests, shards)."""
