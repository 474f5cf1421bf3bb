"""The app layer: CLI assembly, the demo, the embedded-stack supervisor, the report."""
