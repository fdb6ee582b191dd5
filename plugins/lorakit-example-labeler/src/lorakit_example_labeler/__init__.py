"""A worked example of a third-party lorakit labeler plugin."""
