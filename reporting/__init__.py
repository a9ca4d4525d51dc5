"""What people read: the shadow-mode report (`report`, `report_sections`, `report_html`,
`views`) and the blind human review (`reviews`). Reads routing's state; routing never imports it."""
