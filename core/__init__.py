"""Post-Training Workbench core: pure Python, never imports streamlit."""
