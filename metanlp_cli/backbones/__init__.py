"""Text encoders: token ids [batch, length] -> features [batch, output_dim]."""
