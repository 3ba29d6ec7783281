//! OpenIPMI ipmi_sim harness (being written).
