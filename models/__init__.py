"""The model workshop: data, protocol, training and export of predictors (not shipped in the wheel)."""
