"""Repair methods that change a trained model's final layer (Arachne)."""
