document.getElementById("app").textContent="The inspector is being built.";
