"""The commitd AWS commitment sandbox: a local AWS endpoint for the commitment APIs. See docs/sandbox.md."""
