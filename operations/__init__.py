"""Operations: the model registry, run reports and dashboard pictures (what operators watch)."""
