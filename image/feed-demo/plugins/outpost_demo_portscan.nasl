# Outpost demo feed: TCP port scanner. The Greenbone feed ships its own
# port scanner VTs; the demo feed needs one too, or openvas treats every
# unscanned port as closed and no detection below runs. It wraps the
# scanner built into openvas (the same builtin the Greenbone "OpenVAS
# default" scanner uses), over the scan's port list.

if(description)
{
  script_oid("1.3.6.1.4.1.25623.1.0.990000");
  script_version("2024-06-12T05:02:00+0000");
  script_tag(name:"last_modification", value:"2024-06-12 05:02:00 +0000 (Wed, 12 Jun 2024)");
  script_tag(name:"creation_date", value:"2024-06-12 05:02:00 +0000 (Wed, 12 Jun 2024)");
  script_tag(name:"cvss_base", value:"0.0");
  script_tag(name:"cvss_base_vector", value:"AV:N/AC:L/Au:N/C:N/I:N/A:N");
  script_name("Outpost Demo: TCP Port Scanner");
  script_category(ACT_SCANNER);
  script_family("Port scanners");
  script_copyright("Copyright (C) 2024 Outpost project");
  script_tag(name:"summary", value:"Finds open TCP ports in the scan's port list with the TCP connect scanner built into openvas.");
  script_tag(name:"qod_type", value:"remote_active");
  exit(0);
}

plugin_run_openvas_tcp_scanner();
exit(0);
