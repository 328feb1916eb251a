"""Code shared by every stage: configuration, schemas, the on-disk layout, id maps and the
content vectorizer that serving reuses. Stages import from here; nothing here imports a stage."""
