"""Pages that bring every layer together (report.html: metrics, figures and Grad-CAM of the worst
mistakes): above explain, so evaluation never imports upward."""
