"""RunPod serverless worker that runs ComfyUI API-format workflows in-process."""
