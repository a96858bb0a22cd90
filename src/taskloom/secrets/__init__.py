"""Organization secrets: encrypted values steps read as `{{ secrets.NAME }}` (docs/SECRETS.md)."""
