"""The Gradio web UI: `app` (layout and wiring), `controller` (behaviour), `render` (HTML/Markdown)."""
