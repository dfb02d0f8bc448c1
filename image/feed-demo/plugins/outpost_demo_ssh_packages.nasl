# Outpost demo feed: logs in over SSH with the scan's credential, reads the Debian
# package database and hands the installed packages to notus-scanner, which matches
# them against the Notus advisories (table-driven local security checks, the way the
# Greenbone feed's package gatherer does it). The demo lab's SSH host carries a
# version the demo advisories flag.

if(description)
{
  script_oid("1.3.6.1.4.1.25623.1.0.990005");
  script_version("2024-12-05T00:00:00+0000");
  script_tag(name:"last_modification", value:"2024-12-05 00:00:00 +0000 (Thu, 05 Dec 2024)");
  script_tag(name:"creation_date", value:"2024-12-05 00:00:00 +0000 (Thu, 05 Dec 2024)");
  script_tag(name:"cvss_base", value:"0.0");
  script_tag(name:"cvss_base_vector", value:"AV:N/AC:L/Au:N/C:N/I:N/A:N");
  script_name("Outpost Demo: Installed Packages over SSH (Notus)");
  script_category(ACT_GATHER_INFO);
  script_family("Outpost Demo Local Security Checks");
  script_copyright("Copyright (C) 2024 Outpost project");
  script_dependencies("outpost_demo_portscan.nasl");
  script_tag(name:"summary", value:"Logs in over SSH with the scan's credential, lists the installed Debian packages and hands them to Notus for the local security checks.");
  script_tag(name:"qod_type", value:"package");
  exit(0);
}

# The scan's SSH credential, as ospd-openvas hands it to openvas: preferences of the
# SSH authorization VT (whose OID ospd-openvas names), read here by their full names.
auth = "1.3.6.1.4.1.25623.1.0.103591";
login = get_preference(auth + ":1:entry:SSH login name:");
password = get_preference(auth + ":3:password:SSH password (unsafe!):");
if(!login || !password)
  exit(0);

port = get_preference("auth_port_ssh");
if(!port)
  port = 22;
port = int(port);
if(!get_port_state(port))
  exit(0);

sess = ssh_connect(port:port);
if(!sess) {
  log_message(port:port, data:"The SSH service on port " + port + "/tcp did not accept a connection.");
  exit(0);
}
if(ssh_userauth(sess, login:login, password:password) != 0) {
  ssh_disconnect(sess);
  log_message(port:port, data:"SSH login as " + login + " failed: no local security checks for this host.");
  exit(0);
}

release = ssh_request_exec(sess, cmd:". /etc/os-release && echo $ID $VERSION_ID", stdout:1, stderr:0);
# name-version of every package whose status is "install ok installed", from the
# package database itself (the same list `dpkg-query -W` prints).
cmd = 'awk \'/^Package: /{p=$2} /^Version: /{v=$2} /^Status: install ok installed$/{i=1} /^$/{if(i&&p!="")print p "-" v; p=""; v=""; i=0} END{if(i&&p!="")print p "-" v}\' /var/lib/dpkg/status';
packages = ssh_request_exec(sess, cmd:cmd, stdout:1, stderr:0);
ssh_disconnect(sess);

# Only the lines asked for: a login may print more (a notice, a failed chdir).
found = "";
foreach line(split(release, keep:FALSE)) {
  if(line =~ "^[a-z]+ [0-9.]+$")
    found = line;
}
release = found;
if(!release || release !~ "^debian [0-9]+$") {
  log_message(port:port, data:"Logged in over SSH as " + login + ", but the system is not a Debian release this feed knows: " + release);
  exit(0);
}
os_release = "Debian " + ereg_replace(string:release, pattern:"^debian ", replace:"");
list = "";
n = 0;
foreach line(split(packages, keep:FALSE)) {
  if(line =~ "^[a-z0-9][a-z0-9+.-]+-[0-9][0-9A-Za-z.+~:-]*$") {
    if(n > 0)
      list += '\n';
    list += line;
    n++;
  }
}
if(n == 0) {
  log_message(port:port, data:"Logged in over SSH as " + login + ", but no installed package was found.");
  exit(0);
}

# openvas hands the list (one name-version per line) to notus-scanner and publishes
# what it finds as results of the advisories' OIDs.
update_table_driven_lsc_data(pkg_list:list, os_release:os_release);
log_message(port:port, data:"Logged in over SSH as " + login + ": " + os_release + ", " + n + " installed packages handed to Notus.");
exit(0);
